"""The test session's own hygiene (tests/conftest.py): caches go to a temporary folder, never
into the user's home, and a test that changes torch's thread count does not leak it."""
import os
import subprocess
import sys

import torch

from undiffuse.utils.cache import cache_dir

_THREADS: list[int] = []


def test_cache_is_a_temporary_folder_for_this_process_and_its_children(tmp_path_factory):
    home = os.path.join(os.path.expanduser("~"), ".cache", "undiffuse")
    assert os.path.realpath(cache_dir()) != os.path.realpath(home)
    assert os.path.realpath(cache_dir()).startswith(os.path.realpath(tmp_path_factory.getbasetemp()))
    child = subprocess.run([sys.executable, "-c", "from undiffuse.utils.cache import cache_dir; print(cache_dir())"],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == cache_dir()


def test_a_test_may_change_the_thread_count():
    _THREADS.append(torch.get_num_threads())
    torch.set_num_threads(2 if _THREADS[0] == 1 else 1)


def test_the_next_test_gets_the_thread_count_back():
    assert _THREADS, "runs after test_a_test_may_change_the_thread_count"
    assert torch.get_num_threads() == _THREADS[0]
