"""The worker process: one engine feeding a listener's chunks through the scripts to the outputs."""
