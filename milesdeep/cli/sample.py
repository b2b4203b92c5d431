"""`miles-deep sample`: make a short sample video to try the tool on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from milesdeep.cli.app import app, console
from milesdeep.errors import MilesDeepError


@app.command()
def sample(
    output: Annotated[Path, typer.Argument(help="Where to write the video (.mp4)")] = Path(
        "sample.mp4"),
    seconds: Annotated[int, typer.Option(min=1, max=3600, help="Length in seconds")] = 60,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file")
                         ] = False,
) -> None:
    """Write a sample video (test patterns and a tone, H.264 + AAC) to try `tag` and `edit` on."""
    from milesdeep.sample import make_sample_video

    if output.is_dir():
        raise MilesDeepError("is a folder; give the video's file name, e.g. sample.mp4", output)
    if output.exists() and not overwrite:
        from milesdeep.pipeline.decode import probe

        try:  # what is there must be a video the next command can use
            probe(output)
        except MilesDeepError as e:
            raise MilesDeepError(f"exists but is not a usable video ({e.message}); delete it "
                                 "or pass --overwrite", output) from None
        console.print(f"{output} exists; using it as it is (--overwrite makes a new one)")
        return
    if output.suffix.lower() != ".mp4":
        raise MilesDeepError("the sample video is written as MP4: name it *.mp4", output)
    make_sample_video(output, seconds=seconds)
    console.print(f"wrote {output} ({seconds} s)")
