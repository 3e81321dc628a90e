"""The fieldtrack API as a command-line client: settings, HTTP client and typer commands."""
