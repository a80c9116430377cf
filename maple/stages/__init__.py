"""The Ray Data pipelines: reading pairs (`read`), the mining pipeline (`mining`, its steps in `mine_steps`, its
output in `shards`), PAL's feature cache (`features`) and the evaluation pass (`evaluate`). Each takes its config
sections and returns what it wrote; the jobs open the MLflow runs around them. The math they call lives in
maple.mining, maple.losses and maple.eval, free of Ray."""
