"""What watches: collectors, recognisers, the state and its one event model. Imports nothing of ours."""
