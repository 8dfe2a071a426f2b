#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
import os
import sys


def main():
    """Run a management command; a settings error (DJANGO_ENV=production without DJANGO_SECRET_KEY, ...) is
    printed as one line naming the variable to set, with exit status 2, instead of a traceback."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as exc:
        sys.stderr.write(f"manage.py: the settings are not usable: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
