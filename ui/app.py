"""The clusterplan dashboard: a router only (`clusterplan ui`, or
`python -m streamlit run ui/app.py`). Pages live in ui/pages/, figures in ui/charts.py, URL state
and cached computations in ui/state.py."""
import sys
from pathlib import Path

import streamlit as st

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # running from a checkout that is not pip-installed
    sys.path.insert(0, _ROOT)

st.set_page_config(page_title="clusterplan", layout="wide")
PAGES = [
    st.Page("pages/cluster.py", title="Cluster", url_path="cluster", default=True),
    st.Page("pages/train.py", title="Train", url_path="train"),
    st.Page("pages/serve.py", title="Serve", url_path="serve"),
    st.Page("pages/validate.py", title="Validate", url_path="validate"),
]
st.navigation(PAGES).run()
