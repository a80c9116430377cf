"""Entry points, one per job: `python -m jobs.<name> --config <yaml> [section.key=value ...]` (also `maple <name>`)."""
