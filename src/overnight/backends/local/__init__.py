"""Models Overnight carries itself: they run in-process, on the CPU, with no network."""
