"""Channel connectors: deliver decisions to the systems that message people."""
