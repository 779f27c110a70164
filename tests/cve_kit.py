"""Security tracker data for the CVE gate's tests, unit and integration alike."""

from __future__ import annotations

# Debian security tracker data marking base-files (in every image) fixed in version 99,
# urgency high: a CVE gate failing on fail_on: high, for the gate checks.
CVE_TRACKER = {
    "base-files": {
        "CVE-2099-0002": {
            "description": "a test issue",
            "scope": "local",
            "releases": {
                "bookworm": {
                    "status": "resolved",
                    "fixed_version": "99",
                    "urgency": "high",
                    "repositories": {"bookworm": "99"},
                }
            },
        }
    }
}
