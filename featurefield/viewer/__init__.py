"""Interactive viewer: ``featurefield view RUN`` serves a trained run to the browser with viser.

The browser's camera drives renders made here, by the field's own renderer, so the viewer shows every
output a run has: colour, depth, opacity, a PCA picture of each teacher's features (the run's basis, as
``featurefield render`` uses) and, for a teacher with a text encoder, the LERF relevancy of a phrase
typed in the panel, over the colour. For a run with the ``sam`` teacher, a click on an object prompts
SAM with the field's features; the point is kept in 3D, so the mask follows the object as the view
moves, and a button cuts the selection out as a PLY. The training cameras are drawn as frustums;
clicking one moves the view there. While the camera moves, renders are small (``preview_side``); once
it rests for a moment, the view is rendered again at ``max_side``.

Everything is in the run's canonical frame (the one ``field.render`` takes). Usable from Python, a
module each: ``viser_cameras`` (:func:`viewer_camera` / :func:`camera_pose`: viser's camera to ours and
back), ``renderer`` (:class:`ViewRenderer`: any output for a camera), ``client`` (:class:`ClientView`:
one browser tab's render loop), ``server`` (:func:`serve`: the panel and the callbacks; ``featurefield
view``).
"""

from featurefield.viewer.client import REST_SECONDS, SHOW, ClientView
from featurefield.viewer.renderer import BASE_OUTPUTS, CutOut, ViewRenderer, relevancy_overlay
from featurefield.viewer.server import serve
from featurefield.viewer.viser_cameras import camera_pose, viewer_camera

__all__ = ["BASE_OUTPUTS", "REST_SECONDS", "SHOW", "ClientView", "CutOut", "ViewRenderer", "camera_pose",
           "relevancy_overlay", "serve", "viewer_camera"]
