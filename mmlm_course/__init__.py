"""mmlm-course: the helper library behind the multimodal LLM course notebooks.

Each lesson has a module (`shapeworld`, `preprocessing`, ...). Notebooks start with::

    import mmlm_course
    mmlm_course.setup_notebook(seed=0)
"""

from mmlm_course.env import setup_notebook

__version__ = "0.1.0"
__all__ = ["setup_notebook", "__version__"]
