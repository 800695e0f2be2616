"""What every command line of the project shares: help texts that show each option's default."""
from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: …)" to an option's help unless the help already names its default (for options whose
    default comes from a configuration, e.g. "default: sample.nfe")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action)
