"""Studies that pick a recipe or a method by a committed rule, and simulated sites."""
