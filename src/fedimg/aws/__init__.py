"""Everything fedimg does to AWS, one module per pipeline stage."""
