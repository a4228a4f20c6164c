"""fewstep"""
