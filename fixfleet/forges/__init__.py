"""Forges: where a repository's changes are reviewed. The interface is fixfleet/forges/base.py;
GitHub and a plain git remote implement it; refs.py names repositories and threads. (Nothing is
imported here: fixfleet.models reads the thread format from refs.py, below everything else.)"""
