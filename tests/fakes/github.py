"""GitHub REST stand-in: permissions, repositories (branches as commits pushed to them), pull
requests, issue comments, and the GraphQL `markPullRequestReadyForReview` mutation.

It checks what GitHub checks (Bearer token; one open PR per head and base; no PR without
commits) and answers with GitHub's statuses and shapes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from tests.fakes.base import Call, Reply
from tests.fakes.faults import FakeAPI

LEGACY = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read"}
REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"


def _validation(message: str, error: dict[str, Any] | None = None) -> Reply:
    """422 as GitHub words it: `message`, plus an `errors` entry when `error` is given."""
    body: dict[str, Any] = {"message": message, "documentation_url": "https://docs.github.com/rest"}
    if error:
        body["errors"] = [{"resource": "PullRequest", **error}]
    return Reply(422, body)


@dataclass
class Commit:
    sha: str
    tree: dict[str, str]  # path -> text
    parents: list[str]
    message: str


@dataclass
class Repo:
    full_name: str
    default_branch: str
    id: int
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    numbers: itertools.count = field(default_factory=lambda: itertools.count(1))

    def resolve(self, ref: str | None) -> Commit | None:
        ref = ref or self.default_branch
        ref = ref.removeprefix("refs/heads/").removeprefix("heads/")
        sha = self.refs.get(ref, ref)
        return self.commits.get(sha)


class FakeGitHub(FakeAPI):
    published_api = "github"

    def __init__(self, token: str, *, bot_login: str = "fixfleet[bot]") -> None:
        super().__init__()
        self.token = token
        self.bot_login = bot_login
        self.permissions: dict[tuple[str, str], str] = {}  # (owner/repo, login) -> role
        self.comments: list[dict] = []
        self.reactions: list[dict] = []  # {"comment_id", "content"}
        self.repos: dict[str, Repo] = {}
        self.pulls: dict[tuple[str, int], dict[str, Any]] = {}
        self.git_remotes: dict[str, Path] = {}
        self._ids = itertools.count(1000)
        self._shas = itertools.count(1)
        self.route("GET", rf"{REPO}/collaborators/(?P<user>[^/]+)/permission", self._permission)
        self.route("POST", rf"{REPO}/issues/(?P<number>\d+)/comments", self._comment)
        self.route("GET", rf"{REPO}/issues/(?P<number>\d+)/comments", self._list_comments)
        self.route("PATCH", rf"{REPO}/issues/comments/(?P<id>\d+)", self._edit_comment)
        self.route("GET", REPO, self._get_repo)
        self.route("GET", rf"{REPO}/pulls", self._list_pulls)
        self.route("POST", rf"{REPO}/pulls", self._create_pull)
        self.route("GET", rf"{REPO}/pulls/(?P<number>\d+)", self._get_pull)
        self.route("PATCH", rf"{REPO}/pulls/(?P<number>\d+)", self._update_pull)
        self.route("POST", rf"{REPO}/issues/(?P<number>\d+)/labels", self._add_labels)
        self.route("POST", rf"{REPO}/issues/comments/(?P<id>\d+)/reactions", self._react)
        self.route("DELETE", rf"{REPO}/issues/(?P<number>\d+)/labels/(?P<name>[^/]+)", self._remove_label)
        self.route("POST", rf"{REPO}/pulls/(?P<number>\d+)/requested_reviewers", self._request_reviewers)
        self.route("DELETE", rf"{REPO}/git/refs/heads/(?P<branch>.+)", self._delete_branch)
        self.route("POST", r"/graphql", self._graphql)

    def authorized(self, call: Call) -> bool:
        return call.headers.get("authorization") == f"Bearer {self.token}"

    # --- test set-up ----------------------------------------------------------------------------

    def grant(self, repo: str, user: str, role: str) -> None:
        self.permissions[(repo.lower(), user.lower())] = role

    def link_git_remote(self, full_name: str, git_dir: Path) -> None:
        """Branches pushed to this real git remote count as the repository's branches (a mirror)."""
        self.git_remotes[full_name] = git_dir

    def _in_git_remote(self, full_name: str, branch: str) -> bool:
        """Mirror a branch of the linked git remote into the fake's state when it exists there."""
        git_dir = self.git_remotes.get(full_name)
        if git_dir is None:
            return False
        found = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
                               capture_output=True, text=True)
        if found.returncode != 0:
            return False
        repo = self.repos[full_name.lower()]
        sha = found.stdout.strip()
        repo.commits.setdefault(sha, Commit(sha=sha, tree={}, parents=[], message="pushed to the git remote"))
        repo.refs[branch] = sha
        return True

    def add_repo(self, full_name: str, files: dict[str, str] | None = None, default_branch: str = "main") -> str:
        """A repository with one commit holding `files` on `default_branch`; returns its sha."""
        with self.lock:
            repo = Repo(full_name, default_branch, id=next(self._ids))
            self.repos[full_name.lower()] = repo
            sha = self._commit(repo, {}, dict(files or {"README.md": "# sample\n"}), "initial commit")
            repo.refs[default_branch] = sha
            return sha

    def push(self, full_name: str, branch: str, files: dict[str, str], message: str = "push") -> str:
        """A commit on `branch` (as `git push` would make), outside the API; returns its sha."""
        with self.lock:
            repo = self.repos[full_name.lower()]
            parent = repo.resolve(branch) or repo.resolve(None)
            assert parent is not None
            sha = self._commit(repo, parent.tree, files, message, [parent.sha])
            repo.refs[branch] = sha
            return sha

    def files(self, full_name: str, ref: str | None = None) -> dict[str, str]:
        commit = self.repos[full_name.lower()].resolve(ref)
        return dict(commit.tree) if commit else {}

    def pull(self, full_name: str, number: int) -> dict[str, Any]:
        return self._pull_view(self.repos[full_name.lower()], self.pulls[(full_name.lower(), number)])

    def merge(self, full_name: str, number: int, by: str, at: str = "2026-01-02T03:04:05Z") -> dict[str, Any]:
        """A person merged the pull request (outside the API); returns it as a webhook shows it."""
        with self.lock:
            pr = self.pulls[(full_name.lower(), number)]
            pr.update(state="closed", merged=True, merged_by=by, merged_at=at, closed_at=at)
            return self.pull(full_name, number)

    def close_unmerged(self, full_name: str, number: int, at: str = "2026-01-02T03:04:05Z") -> dict[str, Any]:
        with self.lock:
            pr = self.pulls[(full_name.lower(), number)]
            pr.update(state="closed", closed_at=at)
            return self.pull(full_name, number)

    def comments_on(self, full_name: str, number: int) -> list[dict]:
        return [c for c in self.comments if c["repo"].lower() == full_name.lower() and c["issue"] == number]

    # --- helpers --------------------------------------------------------------------------------

    def _commit(self, repo: Repo, base: dict[str, str], changes: dict[str, str], message: str,
                parents: list[str] | None = None) -> str:
        sha = hashlib.sha1(f"{repo.full_name}:{next(self._shas)}:{message}".encode()).hexdigest()
        repo.commits[sha] = Commit(sha, {**base, **changes}, parents or [], message)
        return sha

    def _repo(self, m: re.Match) -> Repo | None:
        return self.repos.get(f"{m['owner']}/{m['repo']}".lower())

    @staticmethod
    def _not_found(message: str = "Not Found") -> Reply:
        return Reply(404, {"message": message, "documentation_url": "https://docs.github.com/rest"})

    # --- permissions and comments ---------------------------------------------------------------

    def _permission(self, call: Call, m: re.Match) -> Reply:
        user = unquote(m["user"])
        role = self.permissions.get((f"{m['owner']}/{m['repo']}".lower(), user.lower()))
        if role is None:
            return Reply(404, {"message": f"{user} is not a user"})
        return Reply(200, {"permission": LEGACY[role], "role_name": role, "user": {"login": user}})

    def _comment(self, call: Call, m: re.Match) -> Reply:
        if not isinstance(call.body, dict) or not isinstance(call.body.get("body"), str):
            return Reply(422, {"message": "body is required"})
        repo, number, cid = f"{m['owner']}/{m['repo']}", int(m["number"]), next(self._ids)
        comment = {
            "id": cid, "node_id": f"IC_{cid}", "body": call.body["body"], "repo": repo, "issue": number,
            "user": {"login": self.bot_login, "type": "Bot"},
            "html_url": f"https://github.com/{repo}/issues/{number}#issuecomment-{cid}",
        }
        self.comments.append(comment)
        return Reply(201, comment)

    def _list_comments(self, call: Call, m: re.Match) -> Reply:
        repo, number = f"{m['owner']}/{m['repo']}", int(m["number"])
        found = self.comments_on(repo, number)
        per_page = min(int((call.query.get("per_page") or ["30"])[0]), 100)
        page = int((call.query.get("page") or ["1"])[0])
        chunk = found[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(found):
            headers["Link"] = f'<{self.url}{call.path}?per_page={per_page}&page={page + 1}>; rel="next"'
        return Reply(200, chunk, headers)

    def _edit_comment(self, call: Call, m: re.Match) -> Reply:
        if not isinstance(call.body, dict) or not isinstance(call.body.get("body"), str):
            return Reply(422, {"message": "body is required"})
        for comment in self.comments:
            if comment["id"] == int(m["id"]) and comment["repo"].lower() == f"{m['owner']}/{m['repo']}".lower():
                comment["body"] = call.body["body"]
                return Reply(200, comment)
        return self._not_found()

    # --- the repository ---------------------------------------------------------------------------

    def _get_repo(self, call: Call, m: re.Match) -> Reply:
        repo = self._repo(m)
        if repo is None:
            return self._not_found()
        owner, name = repo.full_name.split("/")
        return Reply(200, {
            "id": repo.id, "node_id": f"R_{repo.id}", "name": name, "full_name": repo.full_name,
            "owner": {"login": owner}, "private": False, "default_branch": repo.default_branch,
            "html_url": f"https://github.com/{repo.full_name}", "clone_url": f"https://github.com/{repo.full_name}.git",
        })

    # --- pull requests --------------------------------------------------------------------------

    def _pull_view(self, repo: Repo, pr: dict[str, Any]) -> dict[str, Any]:
        owner = repo.full_name.split("/")[0]
        head, base = pr["head_ref"], pr["base_ref"]
        return {
            "id": pr["id"], "node_id": pr["node_id"], "number": pr["number"], "state": pr["state"],
            "draft": pr["draft"], "title": pr["title"], "body": pr["body"],
            "merged": pr.get("merged", False), "merged_at": pr.get("merged_at"), "closed_at": pr.get("closed_at"),
            "merged_by": {"login": pr["merged_by"], "type": "User"} if pr.get("merged_by") else None,
            "labels": [{"name": name} for name in pr.get("labels", [])],
            "requested_reviewers": [{"login": login} for login in pr.get("requested_reviewers", [])],
            "requested_teams": [{"slug": slug} for slug in pr.get("requested_teams", [])],
            "html_url": f"https://github.com/{repo.full_name}/pull/{pr['number']}",
            "url": f"{self.url}/repos/{repo.full_name}/pulls/{pr['number']}",
            "user": {"login": self.bot_login},
            "head": {"ref": head, "label": f"{owner}:{head}", "sha": repo.refs.get(head),
                     "repo": {"full_name": repo.full_name}},
            "base": {"ref": base, "label": f"{owner}:{base}", "sha": repo.refs.get(base),
                     "repo": {"full_name": repo.full_name}},
        }

    def _list_pulls(self, call: Call, m: re.Match) -> Reply:
        repo = self._repo(m)
        if repo is None:
            return self._not_found()
        state = (call.query.get("state") or ["open"])[0]
        head = (call.query.get("head") or [None])[0]
        base = (call.query.get("base") or [None])[0]
        owner = repo.full_name.split("/")[0]
        found = []
        for (name, _), pr in sorted(self.pulls.items(), key=lambda item: -item[0][1]):
            if name != repo.full_name.lower() or (state != "all" and pr["state"] != state):
                continue
            if head is not None and head.lower() != f"{owner}:{pr['head_ref']}".lower():
                continue
            if base is not None and base != pr["base_ref"]:
                continue
            found.append(self._pull_view(repo, pr))
        return Reply(200, found)

    def _create_pull(self, call: Call, m: re.Match) -> Reply:
        repo = self._repo(m)
        if repo is None:
            return self._not_found()
        body = call.body if isinstance(call.body, dict) else {}
        title, head, base = body.get("title"), body.get("head"), body.get("base")
        text, draft = body.get("body"), body.get("draft", False)
        if not isinstance(title, str) or not title.strip():
            return _validation("Validation Failed", {"field": "title", "code": "missing_field"})
        if not isinstance(head, str) or not isinstance(base, str):
            return _validation("Validation Failed", {"field": "head", "code": "missing_field"})
        if text is not None and not isinstance(text, str) or not isinstance(draft, bool):
            return _validation("Invalid request: body must be a string and draft a boolean.")
        owner = repo.full_name.split("/")[0]
        head_branch = head.split(":", 1)[1] if ":" in head else head
        if head_branch not in repo.refs and not self._in_git_remote(repo.full_name, head_branch):
            return _validation("Validation Failed", {"field": "head", "code": "invalid"})
        if base not in repo.refs:
            return _validation("Validation Failed", {"field": "base", "code": "invalid"})
        for (name, _), pr in self.pulls.items():
            if name == repo.full_name.lower() and pr["state"] == "open" and pr["head_ref"] == head_branch and pr["base_ref"] == base:
                return _validation("Validation Failed", {
                    "code": "custom", "message": f"A pull request already exists for {owner}:{head_branch}."})
        if repo.refs[head_branch] == repo.refs[base]:
            return _validation("Validation Failed", {"code": "custom", "message": f"No commits between {base} and {head_branch}"})
        number, pid = next(repo.numbers), next(self._ids)
        pr = {"id": pid, "node_id": f"PR_kwfake{pid}", "number": number, "state": "open", "draft": draft,
              "title": title, "body": text, "head_ref": head_branch, "base_ref": base}
        self.pulls[(repo.full_name.lower(), number)] = pr
        return Reply(201, self._pull_view(repo, pr))

    def _get_pull(self, call: Call, m: re.Match) -> Reply:
        repo = self._repo(m)
        pr = self.pulls.get((f"{m['owner']}/{m['repo']}".lower(), int(m["number"])))
        return Reply(200, self._pull_view(repo, pr)) if repo and pr else self._not_found()

    def _update_pull(self, call: Call, m: re.Match) -> Reply:
        repo = self._repo(m)
        pr = self.pulls.get((f"{m['owner']}/{m['repo']}".lower(), int(m["number"])))
        if repo is None or pr is None:
            return self._not_found()
        body = call.body if isinstance(call.body, dict) else None
        if body is None:
            return Reply(400, {"message": "Problems parsing JSON"})
        for key in ("title", "body"):
            if key in body and body[key] is not None and not isinstance(body[key], str):
                return _validation(f"Invalid request: {key} must be a string.")
        if body.get("state") not in (None, "open", "closed"):
            return _validation("Invalid request: state must be open or closed.")
        if body.get("state") == "closed" and pr["state"] == "open":
            pr["closed_at"] = "2026-01-02T03:04:05Z"
        for key in ("title", "body", "state"):
            if key in body:
                pr[key] = body[key]
        # Like GitHub's REST API, a `draft` field here is ignored: only GraphQL takes a PR out of draft.
        return Reply(200, self._pull_view(repo, pr))

    def _add_labels(self, call: Call, m: re.Match) -> Reply:
        body = call.body if isinstance(call.body, dict) else {}
        labels = body.get("labels")
        if not isinstance(labels, list) or not all(isinstance(name, str) and name for name in labels):
            return _validation("Invalid request: labels must be an array of strings.")
        pr = self.pulls.get((f"{m['owner']}/{m['repo']}".lower(), int(m["number"])))
        if pr is None:
            return self._not_found()
        pr["labels"] = list(dict.fromkeys([*pr.get("labels", []), *labels]))
        return Reply(200, [{"name": name, "color": "ededed"} for name in pr["labels"]])

    def _request_reviewers(self, call: Call, m: re.Match) -> Reply:
        repo = self._repo(m)
        pr = self.pulls.get((f"{m['owner']}/{m['repo']}".lower(), int(m["number"])))
        if repo is None or pr is None:
            return self._not_found()
        body = call.body if isinstance(call.body, dict) else {}
        users, teams = body.get("reviewers", []), body.get("team_reviewers", [])
        if not all(isinstance(x, str) for x in [*users, *teams]):
            return _validation("Invalid request: reviewers must be strings.")
        unknown = [u for u in users if (repo.full_name.lower(), u.lower()) not in self.permissions]
        if unknown:  # GitHub: only collaborators may be asked
            return _validation("Reviews may only be requested from collaborators. One or more of the users or teams "
                               "you specified is not a collaborator of the " + repo.full_name + " repository.")
        pr["requested_reviewers"] = list(dict.fromkeys([*pr.get("requested_reviewers", []), *users]))
        pr["requested_teams"] = list(dict.fromkeys([*pr.get("requested_teams", []), *teams]))
        return Reply(201, self._pull_view(repo, pr))

    def _remove_label(self, call: Call, m: re.Match) -> Reply:
        pr = self.pulls.get((f"{m['owner']}/{m['repo']}".lower(), int(m["number"])))
        name = unquote(m["name"])
        if pr is None or name not in pr.get("labels", []):
            return Reply(404, {"message": "Label does not exist", "documentation_url": "https://docs.github.com/rest"})
        pr["labels"].remove(name)
        return Reply(200, [{"name": label} for label in pr["labels"]])

    def _react(self, call: Call, m: re.Match) -> Reply:
        content = call.body.get("content") if isinstance(call.body, dict) else None
        if content not in ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"):
            return _validation("Validation Failed", {"field": "content", "code": "invalid"})
        self.reactions.append({"comment_id": int(m["id"]), "content": content})
        return Reply(201, {"id": next(self._ids), "content": content, "user": {"login": self.bot_login}})

    def _delete_branch(self, call: Call, m: re.Match) -> Reply:
        repo = self._repo(m)
        if repo is None:
            return self._not_found()
        branch = unquote(m["branch"])
        if branch not in repo.refs and not self._in_git_remote(repo.full_name, branch):
            return _validation("Reference does not exist")
        repo.refs.pop(branch)
        if (git_dir := self.git_remotes.get(repo.full_name)) is not None:
            subprocess.run(["git", "--git-dir", str(git_dir), "update-ref", "-d", f"refs/heads/{branch}"], check=True)
        return Reply(204)

    # --- GraphQL --------------------------------------------------------------------------------

    def _graphql(self, call: Call, m: re.Match) -> Reply:
        body = call.body
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            return Reply(400, {"message": "Problems parsing JSON"})
        query, variables = body["query"], body.get("variables") or {}
        if "markPullRequestReadyForReview" not in query:
            return Reply(200, {"errors": [{"message": "the fake answers markPullRequestReadyForReview only"}]})
        arg = re.search(r'pullRequestId\s*:\s*(?:\$(\w+)|"([^"]*)")', query)
        node_id = (variables.get(arg[1]) if arg[1] else arg[2]) if arg else None
        for (name, _), pr in self.pulls.items():
            if pr["node_id"] == node_id:
                pr["draft"] = False
                return Reply(200, {"data": {"markPullRequestReadyForReview": {
                    "pullRequest": {"id": pr["node_id"], "number": pr["number"], "isDraft": False}}}})
        return Reply(200, {"data": {"markPullRequestReadyForReview": None}, "errors": [{
            "type": "NOT_FOUND", "path": ["markPullRequestReadyForReview"],
            "message": f"Could not resolve to a node with the global id of '{node_id}'"}]})
