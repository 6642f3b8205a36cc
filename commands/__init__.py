"""Bodies of the `asign` commands: plain typed functions that take the parsed options and
return a JSON-able summary (or print the human form). They raise AsignError subclasses;
cli.py only declares the options and turns those errors into one line and exit 1."""
