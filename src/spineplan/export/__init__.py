"""Exports of a plan for other tools: the screw table (CSV), STL meshes and a 3D Slicer folder.

- :func:`spineplan.export.tables.write_screws_csv`
- :func:`spineplan.export.stl.screw_triangles`, :func:`~spineplan.export.stl.rod_triangles`,
  :func:`~spineplan.export.stl.write_stl`
- :func:`spineplan.export.slicer.export_slicer` (markups JSON, STL, ``.seg.nrrd``)

All coordinates are patient LPS millimetres, as in ``plan.json``.
"""
