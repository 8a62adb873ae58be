"""The process model: the app's startup and shutdown, a serving process, the supervisor, the
event-loop monitor."""
