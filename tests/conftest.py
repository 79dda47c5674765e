import os

# No widget frontend in tests: the explorer renders its static figure, matplotlib draws off-screen.
os.environ.setdefault("COURSE_UTILS_STATIC", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
