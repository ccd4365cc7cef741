"""Everything ``evaluate-sp4d`` needs: decoding generated part maps, metrics, reports."""
