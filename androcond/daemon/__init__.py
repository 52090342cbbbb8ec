"""The daemon: its life cycle, inputs (watcher, labels, API), scheduler, resolver, webhooks, metrics, systemd."""
