"""The supervisor: one event loop keeping exactly one worker running; never touches neutron data."""
