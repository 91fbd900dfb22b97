"""The two faces of clusterplan: the command line (ui/cli/, the `clusterplan` command) and the
Streamlit dashboard (`clusterplan ui`: ui/app.py, ui/pages/, figures in ui/charts.py). Both build
training jobs with ui/jobs.py. Nothing outside ui (tests aside) imports it."""
