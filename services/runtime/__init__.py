"""How any confbus service runs: the bus, the consume loop, lifecycle, settings, metrics,
logging and errors. No business logic lives here."""
