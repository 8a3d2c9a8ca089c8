"""Launch files: every node of a robot (or demo) in one TOML file, started and supervised."""
