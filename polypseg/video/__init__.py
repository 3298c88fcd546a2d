"""Video: frames streamed from files or folders, and trackers that carry a polyp mask along."""
