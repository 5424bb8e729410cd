"""The nginx front: the routing table (pure), rendering (pure), debouncing (pure), and applying a
config to nginx (validate, install, reload, confirm), driven once per pass by `front.Front`."""
