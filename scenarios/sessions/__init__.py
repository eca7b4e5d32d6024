"""Sessions (the seed's fourth section): one login across many app instances, behind HAProxy."""
