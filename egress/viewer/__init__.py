"""OHIF, the DICOMweb viewer, served by pacsflow's web server: fetched by ``make install`` from the
npm registry (``install``), configured from the settings (``config``), served at ``/`` (``site``)."""
