"""The data plane and what it needs: what every frontend calls."""
