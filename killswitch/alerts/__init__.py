"""Alerts to webhooks (contract §16): JSON, Slack and PagerDuty, delivered at least once."""

from killswitch.alerts.alerter import Alerter
from killswitch.alerts.model import Alert, Severity
from killswitch.alerts.receivers import Receiver, load_receivers

__all__ = ["Alert", "Alerter", "Receiver", "Severity", "load_receivers"]
