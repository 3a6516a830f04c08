"""sendtrack: the status of every message and action a marketing-automation flow sent."""
