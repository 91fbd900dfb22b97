"""The Streamlit dashboard (`clusterplan ui`); figure builders in ui/charts.py."""
