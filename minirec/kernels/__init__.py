"""Fast kernels. Nothing here imports the rest of minirec; ``minirec._backend``
imports these modules lazily, on first use."""
