"""Planning: screw catalogue, screw/rod/incision/access planning and the plan file model."""
