"""provision: one declarative inventory to a verified, highly available Kubernetes cluster."""

__version__ = "0.1.0"
