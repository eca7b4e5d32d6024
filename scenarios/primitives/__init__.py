"""Building blocks of the scenarios: locks, resources, (later) marks, rings, protocols."""
