"""How a jaxaudio process runs: command-line plumbing, errors, hosts, XLA options, progress, caches."""
