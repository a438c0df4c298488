"""Producers of trunk-setup jobs. Other services use `ProvisioningClient`."""

from producers.client import JobNotFound, ProvisioningClient, WaitTimeout

__all__ = ["JobNotFound", "ProvisioningClient", "WaitTimeout"]
