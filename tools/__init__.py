"""Demo and test tools; not part of the installed product."""
