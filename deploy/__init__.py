"""Production deployment: templates for nginx, systemd, Redis and Prometheus, and their renderer."""
