"""Ray Data stages: the callable classes and writers that jobs put in a Dataset's map steps. The math they call lives
in maple.mining, maple.losses and maple.eval, free of Ray."""
