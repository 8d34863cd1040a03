"""``nanobragg-dataset``: rotation series and stills rendered to SMV, CBF, NeXus or raw float."""
