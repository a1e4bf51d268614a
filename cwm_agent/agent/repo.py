"""The task's git repository: getting it into the sandbox, and taking the agent's changes out."""

from __future__ import annotations

import re
import shlex
import uuid
from pathlib import Path

import git

from cwm_agent.errors import UserError
from cwm_agent.sandbox.base import FileTooLargeError, Sandbox, SandboxError, format_size

# Untracked files never worth a diff: caches, build metadata, and patch files (the submission itself).
JUNK_PATTERN = (
    r"(^|/)(__pycache__|\.pytest_cache|\.mypy_cache|\.ruff_cache|\.tox|\.nox|\.eggs|[^/]*\.egg-info)(/|$)"
    r"|\.py[cod]$|\.(diff|patch|orig|rej)$"
)


class RepoError(UserError, ValueError):
    """The repository or revision given by the user cannot be used; the message says why."""


def checkout_copy(source: str, revision: str | None, dest: Path) -> str:
    """Clone `source` (a local path or a git URL) into `dest` at `revision`; returns the commit sha.

    The user's own checkout is never touched: uncommitted changes there are not part of the task.
    """
    local = Path(source).expanduser()
    if local.exists():
        try:
            has_commits = git.Repo(local).head.is_valid()
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise RepoError(
                f"{source} is not a git repository (run `git init && git add -A && git commit` there first)"
            ) from None
        if not has_commits and not revision:
            raise RepoError(f"{source} has no commits yet: commit the code first (`git add -A && git commit`)")
        source = str(local.resolve())
    elif not _looks_like_url(source):
        raise RepoError(f"{source} does not exist: pass a local git checkout or a git URL") from None
    try:
        repo = git.Repo.clone_from(source, dest, no_hardlinks=True)
    except git.GitCommandError as exc:
        raise RepoError(f"cannot clone {source}: {_one_line(exc.stderr) or exc}") from None
    if revision:
        try:
            repo.git.checkout("--quiet", "--detach", revision)
        except git.GitCommandError:
            raise RepoError(f"revision {revision!r} does not exist in {source}") from None
    if not repo.head.is_valid():
        raise RepoError(f"{source} has no commits to check out: pass --commit, or commit the code first")
    sha = repo.head.commit.hexsha
    for remote in repo.remotes:
        repo.delete_remote(remote)
    return sha


def _looks_like_url(source: str) -> bool:
    """`scheme://...` or scp-like `user@host:path`: something only git can tell us about."""
    return "://" in source or re.match(r"^[\w.-]+@[\w.-]+:", source) is not None


def _one_line(stderr: str) -> str:
    """Git's error output on one line: its `fatal:`/`error:` lines, else all of it."""
    lines = [line.strip().removeprefix("stderr:").strip().strip("'").strip() for line in (stderr or "").splitlines()]
    lines = [line for line in lines if line]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return " ".join(fatal or lines)


def copy_checkout_in(sandbox: Sandbox, checkout: Path, repo_dir: str) -> None:
    """Copy a host checkout (from `checkout_copy`) to `repo_dir` in the sandbox."""
    result = sandbox.run(f"mkdir -p {shlex.quote(repo_dir)}")
    if result.exit_code != 0:
        raise SandboxError(f"cannot create {repo_dir} in the sandbox: {result.output}")
    sandbox.copy_in(checkout, repo_dir)


def head_commit(sandbox: Sandbox, repo_dir: str) -> str:
    result = sandbox.run(f"git -C {shlex.quote(repo_dir)} rev-parse HEAD")
    if result.exit_code != 0:
        raise SandboxError(f"{repo_dir} in the sandbox is not a git repository: {result.output.strip()}")
    return result.output.strip()


def working_tree_diff(
    sandbox: Sandbox, repo_dir: str, base_commit: str, exclude: list[str] = (), max_bytes: int | None = None
) -> str:
    """`git diff` of the working tree against `base_commit`, new files included.

    Uses a throw-away index so the agent's own index, commits and stashes don't matter; skips
    untracked junk (caches, `*.egg-info`, patch files) and the paths in `exclude`. The diff goes
    through a fresh directory (`mktemp -d`, a random name the model can't have prepared), is read
    only as a regular file and only up to `max_bytes` (default `sandbox.max_diff_bytes`). Raises
    only `SandboxError`: whatever goes wrong, the caller keeps what it already has.
    """
    cap = max_bytes if max_bytes is not None else sandbox.config.max_diff_bytes
    marker = f"__CWM_DIFF_{uuid.uuid4().hex}__"
    excluded = "|".join(["^(" + "|".join(map(_regex_escape, exclude)) + ")$"] if exclude else [])
    filter_cmd = f"grep -zvE {shlex.quote(JUNK_PATTERN)}"
    if excluded:
        filter_cmd += f" | grep -zvE {shlex.quote(excluded)}"
    script = f"""(
cd {shlex.quote(repo_dir)} || exit 1
out=$(mktemp -d /tmp/.cwm-diff.XXXXXXXXXX) || exit 1
idx=$(mktemp) && trap 'rm -f "$idx"' EXIT
export GIT_INDEX_FILE="$idx"
git read-tree {shlex.quote(base_commit)} || exit 1
git add -u -- . || exit 1
git ls-files -z --others --exclude-standard | {{ {filter_cmd} || true; }} | xargs -0 -r git add -f -- || exit 1
git -c core.quotePath=false diff --cached --binary --no-color {shlex.quote(base_commit)} > "$out/diff" || exit 1
echo "{marker}$out"
)"""
    # The diff goes through a file: the session's output cap must not cut it.
    try:
        result = sandbox.run(script)
        found = [line for line in result.output.splitlines() if line.startswith(marker)]
        if result.exit_code != 0 or not found:
            raise SandboxError(f"taking the diff of {repo_dir} failed: {result.output[-2000:]}")
        directory = found[-1][len(marker) :]
        try:
            data = sandbox.read_file(f"{directory}/diff", max_bytes=cap, follow_symlinks=False)
        finally:
            sandbox.run(f"rm -rf {shlex.quote(directory)}")
    except FileTooLargeError:
        raise DiffTooLargeError(
            f"the diff of {repo_dir} is over the cap of {format_size(cap)} (sandbox.max_diff_bytes); "
            "large generated or data files in the working tree?"
        ) from None
    except SandboxError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile sandbox must not turn into a harness error
        raise SandboxError(f"taking the diff of {repo_dir} failed: {type(exc).__name__}: {exc}") from exc
    return data.decode("utf-8", errors="replace")


class DiffTooLargeError(SandboxError):
    """The working tree's diff is over `sandbox.max_diff_bytes`."""


def _regex_escape(path: str) -> str:
    return "".join("\\" + c if c in r".^$*+?()[]{}|\\" else c for c in path)


def scrub_script(base_commit: str, repo_dir: str = "/testbed") -> str:
    """Bash that drops every commit not reachable from `base_commit`; the working tree is left as it is."""
    base = shlex.quote(base_commit)
    return f"""\
set -e
cd {shlex.quote(repo_dir)}
git cat-file -e {base}^{{commit}}
branch=$(git symbolic-ref --short -q HEAD || echo main)
case "$branch" in ""|HEAD) branch=main ;; esac
git update-ref "refs/heads/$branch" {base}
git symbolic-ref HEAD "refs/heads/$branch"
git for-each-ref --format='%(refname)' | while read -r ref; do
  [ "$ref" = "refs/heads/$branch" ] || git update-ref -d "$ref"
done
for remote in $(git remote); do git remote remove "$remote"; done
git reset -q
git worktree prune
rm -f .git/ORIG_HEAD .git/FETCH_HEAD .git/MERGE_HEAD .git/CHERRY_PICK_HEAD .git/REVERT_HEAD .git/AUTO_MERGE
rm -rf .git/logs .git/refs/original .git/rebase-merge .git/rebase-apply
git reflog expire --expire=now --all
git -c gc.reflogExpire=now -c gc.reflogExpireUnreachable=now gc --prune=now --quiet
echo "scrubbed: HEAD=$(git rev-parse HEAD) on $branch, $(git rev-list --all | wc -l) commits"
"""


def scrub_git_history(sandbox: Sandbox, base_commit: str, repo_dir: str = "/testbed", timeout: float = 300) -> str:
    """Before the agent's first turn: make the upstream fix unreadable from git history.

    Afterwards the repository's only ref is a branch at `base_commit` (HEAD on it); other branches,
    tags, remotes, reflogs and stashes are gone and unreachable objects are pruned. The working tree
    is untouched (the index is reset to the base commit). Returns the script's output.
    """
    result = sandbox.run(f"( {scrub_script(base_commit, repo_dir)} ) 2>&1", timeout=timeout)
    if result.exit_code != 0:
        raise SandboxError(
            f"Scrubbing git history in {repo_dir} failed (exit {result.exit_code}):\n{result.output[-2000:]}"
        )
    return result.output
