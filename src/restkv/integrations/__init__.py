"""restkv inside other serving engines (each a subpackage; none is imported by ``import restkv``)."""
