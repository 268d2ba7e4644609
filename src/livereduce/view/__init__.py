"""The live view page: status, figures and log lines, read from the files the daemon writes."""
