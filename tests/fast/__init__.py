"""The fast tier: pure decisions, no test bed, no root; runs in seconds (scripts/test.sh runs it first)."""
