"""nexus-ray: the Nexus COS platform as an async, actor-based runtime on Ray."""
