# tests/fuzz holds the shared fuzz strategies (surfaces.py) and the long-profile script
# (long_profile.py); neither is a test module. tests/test_fuzz.py runs the CI profile.
collect_ignore = ["surfaces.py", "long_profile.py"]
