"""Forges: where a repository's changes are reviewed. The interface is fixfleet/forges/base.py;
GitHub and a plain git remote implement it. How repositories and threads are named is
fixfleet/forge_refs.py, a layer below, since the task model checks those names too."""
